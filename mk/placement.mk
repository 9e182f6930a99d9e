# ravada-place and ocf:ravada:nodeinfo: their tests and benchmark (included by the Makefile)
.PHONY: test-placement bench-placement
test-placement:
	$(PYTHON) -m pytest test/placement test/unit/test_nodeinfo.py test/integration/test_nodeinfo_libvirt.py

bench-placement:
	bench/placement

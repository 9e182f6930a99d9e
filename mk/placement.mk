# ravada-place: its tests and benchmark (included by the Makefile)
.PHONY: test-placement bench-placement
test-placement:
	$(PYTHON) -m pytest test/placement

bench-placement:
	bench/placement

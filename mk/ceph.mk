# Ceph RBD safety: real-cluster tests and the failover benchmark (see doc/rbd.md)
.PHONY: test-ceph bench-rbd-failover
test-ceph:
	$(PYTHON) -m pytest test/ceph

bench-rbd-failover:
	$(PYTHON) bench/rbd-failover

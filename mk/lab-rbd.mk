# RBD VMs under Pacemaker in the lab, power + fence_rbd fencing topology, seqwriter audit
# (test/e2e/test_lab_rbd.py: its own 3-node lab and a throw-away Ceph on the lab switch).
.PHONY: test-lab-rbd
test-lab-rbd: deps install install-lab
	$(PYTHON) -m pytest test/e2e/test_lab_rbd.py

# ravada-lab: a real multi-node Pacemaker + libvirt cluster on this host (doc/lab.md).
LAB_NAME  ?= lab
LAB_NODES ?= 3
RAVADA_LAB = tools/ravada-lab --name $(LAB_NAME)

.PHONY: demo demo-down test-e2e bench-failover

# Installs what is missing, installs the tree, starts a lab and puts three 64 MiB VMs on it.
demo: deps install
	$(RAVADA_LAB) up --nodes $(LAB_NODES)
	PYTHONPATH=lib $(PYTHON) -m ocf_ravada.lab.demo --name $(LAB_NAME)

demo-down:
	$(RAVADA_LAB) down

test-e2e: deps install
	$(PYTHON) -m pytest test/e2e

bench-failover: deps install
	bench/failover

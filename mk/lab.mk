# ravada-lab: a real multi-node Pacemaker + libvirt cluster on this host (doc/lab.md).
# Test tooling, installed apart from the production agents: `make install-lab`.
LAB_NAME  ?= lab
LAB_NODES ?= 3
LAB_COMMANDS := lab/ravada-lab lab/fence_ravada_lab
RAVADA_LAB = lab/ravada-lab --name $(LAB_NAME)

.PHONY: install-lab uninstall-lab demo demo-down test-e2e bench-failover

# Pacemaker's fencer finds fence_ravada_lab only in /usr/sbin.
install-lab:
	install -d $(DESTDIR)$(PYLIBDIR) $(DESTDIR)$(SBINDIR)
	for c in $(LAB_COMMANDS); do install -m 0755 $$c $(DESTDIR)$(SBINDIR)/; done
	$(call install_pypackage,lab/ravada_lab)

uninstall-lab:
	for c in $(LAB_COMMANDS); do rm -f $(DESTDIR)$(SBINDIR)/$$(basename $$c); done
	rm -rf $(DESTDIR)$(PYLIBDIR)/ravada_lab

# Installs what is missing, installs the tree, starts a lab and puts three 64 MiB VMs on it.
demo: deps install install-lab
	$(RAVADA_LAB) up --nodes $(LAB_NODES)
	PYTHONPATH=lib:lab $(PYTHON) -m ravada_lab.demo --name $(LAB_NAME)

demo-down:
	$(RAVADA_LAB) down

test-e2e: deps install install-lab
	$(PYTHON) -m pytest test/e2e

bench-failover: deps install install-lab
	bench/failover

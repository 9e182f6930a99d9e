# ravada-lab: a real multi-node Pacemaker + libvirt cluster on this host (doc/lab.md).
# Test tooling, installed apart from the production agents: `make install-lab`.
LAB_NAME  ?= lab
LAB_NODES ?= 3
LAB_COMMANDS := lab/ravada-lab lab/fence_ravada_lab
RAVADA_LAB = lab/ravada-lab --name $(LAB_NAME)
LAB_MAN_PAGES := $(LAB_COMMANDS:lab/%=$(MANBUILD)/man8/%.8)

.PHONY: man-lab install-lab uninstall-lab demo demo-down test-e2e bench-failover

man-lab: $(LAB_MAN_PAGES)

$(MANBUILD)/man8/fence_%.8: lab/fence_% $(MAN_INPUTS)
	@mkdir -p $(@D)
	$(call MAKE_MAN,fence,$<,$(MAN_PAGES) $(LAB_MAN_PAGES))

$(MANBUILD)/man8/ravada-%.8: lab/ravada-% $(MAN_INPUTS)
	@mkdir -p $(@D)
	$(call MAKE_MAN,command,$<,$(MAN_PAGES) $(LAB_MAN_PAGES))

# Pacemaker's fencer finds fence_ravada_lab only in /usr/sbin.
install-lab: man-lab
	install -d $(DESTDIR)$(PYLIBDIR) $(DESTDIR)$(SBINDIR) $(DESTDIR)$(MANDIR)/man8
	for c in $(LAB_COMMANDS); do install -m 0755 $$c $(DESTDIR)$(SBINDIR)/; done
	$(call install_pypackage,lab/ravada_lab)
	install -m 0644 $(LAB_MAN_PAGES) $(DESTDIR)$(MANDIR)/man8/

uninstall-lab:
	for c in $(LAB_COMMANDS); do rm -f $(DESTDIR)$(SBINDIR)/$$(basename $$c); done
	rm -rf $(DESTDIR)$(PYLIBDIR)/ravada_lab
	rm -f $(LAB_MAN_PAGES:$(MANBUILD)/%=$(DESTDIR)$(MANDIR)/%)

# Installs what is missing, installs the tree, starts a lab, puts three 64 MiB VMs on it and
# prints the tour (`ravada-lab tour` runs it). CEPH=1: with a throw-away Ceph in the lab, the
# VMs on RBD disks, fence_rbd in the fencing topology.
demo: deps install install-lab
	$(RAVADA_LAB) up --nodes $(LAB_NODES)$(if $(CEPH), --ceph)
	PYTHONPATH=lib:lab $(PYTHON) -m ravada_lab.demo --name $(LAB_NAME)

demo-down:
	$(RAVADA_LAB) down

test-e2e: deps install install-lab
	$(PYTHON) -m pytest test/e2e

bench-failover: deps install install-lab
	bench/failover

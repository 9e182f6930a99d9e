# ocf-ravada — install, test, demo.  Everything runs with Debian's /usr/bin/python3.
PYTHON    ?= /usr/bin/python3
DESTDIR   ?=
PREFIX    ?= /usr
OCF_ROOT  ?= /usr/lib/ocf
# Debian's python3 imports from here whatever PREFIX is.
PYLIBDIR  ?= /usr/lib/python3/dist-packages
SBINDIR   ?= $(PREFIX)/sbin
MANDIR    ?= $(PREFIX)/share/man
# Where Pacemaker's packages put alert agents; the CIB templates for ravada-cib.
ALERTDIR  ?= $(PREFIX)/share/pacemaker/alerts
TEMPLATEDIR ?= $(PREFIX)/share/ocf-ravada/cib-templates
VERSION   := $(shell sed -n 's/^version *= *//p' setup.cfg)

AGENTS    := $(wildcard agents/*)
ALERTS    := $(wildcard alerts/*)
# The lab's fencing snippet is test tooling, not a template to ship.
TEMPLATES := $(filter-out cib-templates/lab-%,$(wildcard cib-templates/*.xml))
COMMANDS  := $(wildcard tools/ravada-* tools/fence_*)
PYPACKAGES:= lib/ocf_ravada $(wildcard placement/ravada_placement)
# Installs a Python package directory under $(PYLIBDIR) (and prunes what an older one left).
install_pypackage = mk/install-pypackage $(1) $(DESTDIR)$(PYLIBDIR)

.PHONY: all deps man install uninstall test test-unit doc bench clean
all:
	@echo "targets: deps install install-lab test test-unit demo demo-down doc bench man deb"

deps:
	tools/install-deps

install: man
	install -d $(DESTDIR)$(OCF_ROOT)/resource.d/ravada $(DESTDIR)$(PYLIBDIR) $(DESTDIR)$(SBINDIR)
	install -d $(DESTDIR)$(MANDIR)/man7 $(DESTDIR)$(MANDIR)/man8
	install -m 0644 $(filter %.7,$(MAN_PAGES)) $(DESTDIR)$(MANDIR)/man7/
	install -m 0644 $(filter %.8,$(MAN_PAGES)) $(DESTDIR)$(MANDIR)/man8/
	for a in $(AGENTS); do \
	    sed -e 's|^LIBRARY_DIR = .*|LIBRARY_DIR = "$(PYLIBDIR)"|' $$a > $(DESTDIR)$(OCF_ROOT)/resource.d/ravada/$$(basename $$a); \
	    chmod 0755 $(DESTDIR)$(OCF_ROOT)/resource.d/ravada/$$(basename $$a); \
	done
	for c in $(COMMANDS); do install -m 0755 $$c $(DESTDIR)$(SBINDIR)/; done
	install -d $(DESTDIR)$(ALERTDIR) $(DESTDIR)$(TEMPLATEDIR)
	for a in $(ALERTS); do \
	    sed -e 's|^LIBRARY_DIR = .*|LIBRARY_DIR = "$(PYLIBDIR)"|' $$a > $(DESTDIR)$(ALERTDIR)/$$(basename $$a); \
	    chmod 0755 $(DESTDIR)$(ALERTDIR)/$$(basename $$a); \
	done
	install -m 0644 $(TEMPLATES) $(DESTDIR)$(TEMPLATEDIR)/
	$(foreach p,$(PYPACKAGES),$(call install_pypackage,$(p));)

uninstall:
	rm -f $(MAN_PAGES:$(MANBUILD)/%=$(DESTDIR)$(MANDIR)/%)
	for a in $(AGENTS); do rm -f $(DESTDIR)$(OCF_ROOT)/resource.d/ravada/$$(basename $$a); done
	for c in $(COMMANDS); do rm -f $(DESTDIR)$(SBINDIR)/$$(basename $$c); done
	for a in $(ALERTS); do rm -f $(DESTDIR)$(ALERTDIR)/$$(basename $$a); done
	rm -rf $(DESTDIR)$(TEMPLATEDIR)
	for p in $(PYPACKAGES); do rm -rf $(DESTDIR)$(PYLIBDIR)/$$(basename $$p); done

# The README's test command: installs what is missing (the lab's nodes run the installed
# agents and fence agents), then every test, real stacks included.
test: deps install install-lab
	$(PYTHON) -m pytest test

test-unit:
	$(PYTHON) -m pytest test/unit

doc:
	tools/metadata-to-markdown agents/VirtualDomain --update README.md

bench:
	bench/monitor
	bench/placement
	bench/rbd-failover
	bench/backup
	bench/failover
	bench/basesync
	bench/scale

clean:
	find . -name __pycache__ -prune -exec rm -rf {} +
	rm -rf build

include mk/man.mk
-include $(filter-out mk/man.mk,$(wildcard mk/*.mk))

# Debian packages ocf-ravada and ocf-ravada-lab (debian/), checked with lintian; needs
# deps/packaging.list.  Built in $(DEBBUILD) from a copy of the files git knows (committed or
# not, as they are in the working tree; nothing ignored, no build output): in a clean checkout
# that is HEAD.
DEBBUILD ?= build/deb
DEBSRC    = $(DEBBUILD)/ocf-ravada-$(VERSION)
.PHONY: deb
deb:
	rm -rf $(DEBBUILD)
	mkdir -p $(DEBSRC)
	git ls-files -z --cached --others --exclude-standard \
	    | tar --null --files-from=- --ignore-failed-read -cf - | tar -xf - -C $(DEBSRC)
	cd $(DEBSRC) && dpkg-buildpackage -us -uc -b
	lintian --fail-on error $(DEBBUILD)/*.changes
	@ls $(DEBBUILD)/*.deb

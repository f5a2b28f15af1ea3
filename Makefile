# cairn — see README.md. Every target is safe to run on a fresh clone.
GO        ?= /usr/local/go/bin/go
export PATH := /usr/local/go/bin:$(PATH)
BIN       := bin/cairn
DEB_PKGS  := fio libnbd-bin nbdkit qemu-utils fuse3 e2fsprogs xfsprogs jq util-linux
FUZZTIME  ?= 30s

.PHONY: deps build run test bench fuzz lint crash clean

# deps installs the Debian packages the tests drive (real clients, real peers).
# Idempotent and quiet when everything is present.
deps:
	@missing=""; for p in $(DEB_PKGS); do dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then echo "installing:$$missing"; \
	  DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; fi

build:
	$(GO) build -o $(BIN) ./cmd/cairn

# run starts the daemon in the foreground on the embedded default drive in ./data.
run: build
	./$(BIN) daemon --data-dir ./data

test: deps
	$(GO) vet ./...
	$(GO) build -o $(BIN) ./cmd/cairn
	$(GO) test -count=1 -timeout 14m ./...

bench: build
	$(GO) test -run '^$$' -bench . -benchmem ./bench/...

fuzz:
	@for pkg in $$($(GO) list ./fuzz/...); do \
	  for f in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz'); do \
	    echo "== $$pkg $$f"; $(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) $$pkg || exit 1; \
	  done; done

lint:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || (gofmt -l $$(git ls-files '*.go'); exit 1)
	$(GO) vet ./...
	$(GO) run honnef.co/go/tools/cmd/staticcheck@latest ./...

clean:
	rm -rf bin

# cairn — see README.md. Every target is safe to run on a fresh clone.
GO        ?= /usr/local/go/bin/go
export PATH := /usr/local/go/bin:$(PATH)
BIN       := bin/cairn
DEB_PKGS  := fio libnbd-bin nbdkit qemu-utils fuse3 e2fsprogs xfsprogs jq util-linux linux-perf strace etcd-server nftables
FUZZTIME  ?= 30s
STATICCHECK := honnef.co/go/tools/cmd/staticcheck@v0.8.2
# The S3 server the cloudsnap tests start (internal/s3test finds it in GOPATH/bin).
VERSITYGW := github.com/versity/versitygw/cmd/versitygw@v1.8.0

.PHONY: deps build run test bench fuzz lint crash clean

# deps installs the Debian packages the tests drive (real clients, real peers)
# and the benchmarks use (perf and strace: compare.sh -m, durprof.sh), and
# etcd-server for the external 3-member etcd the cluster tests start, nftables
# for the test that cuts a node off the kvdb by its address; and versitygw
# (go install, pinned) for the cloudsnap tests' S3 server.
# Idempotent and quiet when everything is present.
deps:
	@missing=""; for p in $(DEB_PKGS); do dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then echo "installing:$$missing"; \
	  DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; fi
	@gw="$$($(GO) env GOPATH)/bin/versitygw"; stamp="$$gw.version"; \
	if [ ! -x "$$gw" ] || [ "$$(cat $$stamp 2>/dev/null)" != "$(VERSITYGW)" ]; then \
	  echo "installing $(VERSITYGW)"; $(GO) install $(VERSITYGW) && echo "$(VERSITYGW)" > "$$stamp"; fi

build:
	$(GO) build -o $(BIN) ./cmd/cairn

# run starts the daemon in the foreground on the embedded default drive in ./data.
run: build
	./$(BIN) daemon --data-dir ./data

test: deps lint
	$(GO) build -o $(BIN) ./cmd/cairn
	$(GO) test -count=1 -timeout 14m ./...

bench: build
	$(GO) test -run '^$$' -bench . -benchmem ./bench/...

# fuzz runs every target under fuzz/ for FUZZTIME each (make test runs only
# their seed corpora). Minimizing a new input is capped: the corpora hold
# multi-KiB logs and checkpoints, and minimizing those would eat the run.
FUZZMINIMIZE ?= 10s
fuzz:
	@for pkg in $$($(GO) list ./fuzz/...); do \
	  for f in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz'); do \
	    echo "== $$pkg $$f"; $(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) -fuzzminimizetime $(FUZZMINIMIZE) $$pkg || exit 1; \
	  done; done

# crash runs the crash loops against the real binary: SIGKILL (and, with
# FUSE, power loss below the page cache) CRASH_ITERATIONS times each.
CRASH_ITERATIONS ?= 20
crash: deps
	$(GO) test -count=1 -timeout 120m -v -run 'Crash|PowerLoss' ./tests/crash/ -args -iterations $(CRASH_ITERATIONS)

# lint: gofmt (lists the files that need it), go vet, and staticcheck at a
# pinned version (bump it deliberately; a newer one may find new things).
lint:
	@unformatted="$$(gofmt -l $$(git ls-files '*.go'))"; \
	if [ -n "$$unformatted" ]; then echo "gofmt -w these files:"; echo "$$unformatted"; exit 1; fi
	$(GO) vet ./...
	$(GO) run $(STATICCHECK) ./...

clean:
	rm -rf bin

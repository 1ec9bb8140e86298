# libmessidge: the two commands.
#   make demo   install what is missing, build, run the notes demo on loopback
#   make fleet-demo   the same demo across two brokers in a fleet: a NATS
#                  cluster of three and PostgreSQL, on loopback (docs/fleet.md)
#   make test   install what is missing, build with ASan+UBSan, run ctest
#   make fuzz   run the wire-decoder fuzzer for FUZZ_SECONDS (default 60)
#   make install   Release build of what is installed (library, headers, tools,
#                  man pages; no tests) and install under PREFIX (default
#                  /usr/local). Installs no packages: run `make deps` first.
#   make python    build messidge for Python (python/) into build/python
#
# Every build here but `make install` treats warnings as errors
# (MDG_WERROR=ON); a plain cmake build does so only for Debug.

PREFIX ?= /usr/local
JOBS ?= $(shell nproc 2>/dev/null || echo 2)
FUZZ_SECONDS ?= 60
DEBS = build-essential cmake pkg-config libzmq3-dev libsodium-dev libcbor-dev \
       libnats-dev libsqlite3-dev libpq-dev libmicrohttpd-dev libcurl4-openssl-dev libjansson-dev clang libclang-rt-14-dev \
       python3-dev
# What `make bench` needs on top: the NATS baseline (server, C client) and
# openssl for its TLS certificate.
BENCH_DEBS = nats-server libnats-dev openssl
# What `make test` needs on top: the Messidge 1.x interop peers (Python,
# with Debian's own modules; no PyPI), pytest for messidge for Python, and
# a PostgreSQL server for the shared identity store's tests (each starts
# its own, on loopback, in a temporary directory), and a NATS server for
# the fleet's tests (each starts its own, on loopback).
TEST_DEBS = python3 python3-zmq python3-libnacl python3-cbor python3-pytest postgresql nats-server

# What `make fleet-demo` needs on top: the NATS servers and PostgreSQL.
FLEET_DEMO_DEBS = nats-server postgresql

.PHONY: all deps build demo fleet-demo test fuzz install clean bench python

all: build

# Install only the Debian packages that are missing (needs root for apt-get).
deps:
	@missing=""; for p in $(DEBS) $(EXTRA_DEBS); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'install ok installed' || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi

build: deps
	cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMDG_WERROR=ON >/dev/null
	cmake --build build -j $(JOBS)

demo: build
	./demo/run-demo.sh build

fleet-demo:
	$(MAKE) build EXTRA_DEBS="$(FLEET_DEMO_DEBS)"
	./demo/run-fleet-demo.sh build

# messidge for Python: the package in build/python (PYTHONPATH=build/python),
# also built by `make build`; installed by `make install`.
python: deps
	cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMDG_WERROR=ON >/dev/null
	cmake --build build -j $(JOBS) --target python

test:
	$(MAKE) deps EXTRA_DEBS="$(TEST_DEBS)"
	CC=clang cmake -S . -B build-test -DCMAKE_BUILD_TYPE=Debug -DMDG_SANITIZE=ON -DMDG_FUZZ=ON \
	  -DMDG_WERROR=ON >/dev/null
	cmake --build build-test -j $(JOBS)
	cd build-test && ctest --output-on-failure -j $(JOBS) --timeout 300

fuzz: deps
	CC=clang cmake -S . -B build-test -DCMAKE_BUILD_TYPE=Debug -DMDG_SANITIZE=ON -DMDG_FUZZ=ON >/dev/null
	cmake --build build-test -j $(JOBS) --target fuzz_wire
	mkdir -p build-test/fuzz-corpus
	build-test/tests/fuzz_wire -max_total_time=$(FUZZ_SECONDS) build-test/fuzz-corpus tests/fuzz-inputs

# No apt-get and no tests: what a packager or `sudo make install` expects.
install:
	cmake -S . -B build-install -DCMAKE_BUILD_TYPE=Release -DCMAKE_INSTALL_PREFIX=$(PREFIX) \
	  -DMDG_TESTS=OFF -DMDG_BENCH=OFF -DMDG_WERROR=OFF >/dev/null
	cmake --build build-install -j $(JOBS)
	cmake --install build-install

clean:
	rm -rf build build-test build-install

# Benchmarks (bench/README.md): install what is missing, build optimised
# (-O2, no sanitizers) in build-bench, run every scenario on loopback, print
# the table and write bench/results.json.
bench:
	$(MAKE) deps EXTRA_DEBS="$(BENCH_DEBS)"
	cmake -S . -B build-bench -DCMAKE_BUILD_TYPE=Release -DCMAKE_C_FLAGS_RELEASE="-O2 -DNDEBUG" \
	  -DMDG_BENCH=ON -DMDG_TESTS=OFF -DMDG_WERROR=ON >/dev/null
	cmake --build build-bench -j $(JOBS)
	./bench/run-bench.sh build-bench

# The two commands of the README: `make demo` and `make test`. Both set up a fresh machine first.
SHELL := /bin/bash
export PATH := $(CURDIR)/node_modules/.bin:$(PATH)

.PHONY: setup test demo demo-cli check bench
setup:
	@scripts/setup.sh

check: setup
	tsc -p tsconfig.json
	eslint .

test: check
	@mkdir -p .cache
	vitest run --reporter=default --reporter=json --outputFile.json=.cache/vitest.json; rc=$$?; node scripts/test-summary.ts .cache/vitest.json; exit $$rc

demo: setup
	node scripts/demo.ts

demo-cli: setup
	scripts/demo-cli.sh

bench: setup
	node bench/run.ts

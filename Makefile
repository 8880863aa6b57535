# The two quickstart commands: `make run` and `make test`. Both set everything up first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint browser faq curl axe bench clean

run: $(STAMP)
	$(BIN)/rapport serve

test: $(STAMP) lint browser faq curl axe
	$(BIN)/pytest -n 2 --dist loadfile

# The browser tests drive Debian's chromium (never a downloaded one). Installed here when
# missing (as root); if it cannot be, the browser tests fail: they are never skipped.
browser:
	@command -v chromium >/dev/null 2>&1 || DEBIAN_FRONTEND=noninteractive apt-get install -y chromium \
		|| { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium; } \
		|| echo "could not install chromium: the browser tests will fail"

# The grounding tests ask every evaluation set of bench/evalsets.py (tests/test_grounding_eval.py):
# the FAQs and manual of these Debian packages, and the package index through lz4; installed
# here when missing, as chromium is.
EVAL_PACKAGES := python3.11-doc sqlite3-doc perl-doc git-doc lz4
faq:
	@missing=$$(for p in $(EVAL_PACKAGES); do dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'ok installed' || echo $$p; done); \
	test -z "$$missing" || DEBIAN_FRONTEND=noninteractive apt-get install -y $$missing \
		|| { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y $$missing; } \
		|| echo "could not install $$missing: the grounding tests will fail"

# tests/test_readme_examples.py runs the README's examples, which are curl commands.
curl:
	@command -v curl >/dev/null 2>&1 || DEBIAN_FRONTEND=noninteractive apt-get install -y curl \
		|| { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y curl; } \
		|| echo "could not install curl: the README examples test will fail"

# The accessibility checks run axe-core, pinned and checked against the npm registry's sha512,
# fetched by Python alone (no node needed) into .cache/axe-core/; without it those tests fail.
axe: $(STAMP)
	@$(BIN)/python tests/axe_core.py || true

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

$(STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Rapport needs Python >= 3.11")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[test]'
	touch $(STAMP)

clean:
	rm -rf $(VENV) rapport-data .pytest_cache .ruff_cache

# The two commands of the README. Each installs what is missing and is safe
# to run again.
.PHONY: run test bench mutants

## Serve every function locally on http://127.0.0.1:$${PORT:-9000}
run:
	@bash scripts/run.sh

## Run the whole test suite against throwaway Redis, Redis Cluster and PostgreSQL
test:
	@bash scripts/test.sh

## Benchmarks (criterion) against a throwaway Redis
bench:
	@bash scripts/bench.sh

## Mutation testing (cargo-mutants): SHARD=<name>|all, DIFF=<ref>, or FILES='…' TESTS='…'; RE=<regex> to run only the matching mutants
mutants:
	@SHARD="$(SHARD)" DIFF="$(DIFF)" FILES="$(FILES)" TESTS="$(TESTS)" LIST="$(LIST)" RE="$(RE)" bash scripts/mutants.sh

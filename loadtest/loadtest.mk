# Load-test targets (included by the Makefile); docs/loadtest.md explains every step.
#   make loadtest                 local stack, short generator run, verify, report (prints its path)
#   make loadtest-jmeter          local stack, JMeter's HTTP plan, verify, report
#   make loadtest-verify RUN=dir  verify a run directory again (exit 1 on any violation)
#   make loadtest-report RUN=dir  rebuild a run's HTML report
#   make loadtest-aws STACK=loadtest PROFILE=300k   distributed run on ECS, then gather
#   make loadtest-gather RUN_ID=… BUCKET=…          download and merge a distributed run
.PHONY: loadtest loadtest-jmeter loadtest-verify loadtest-report loadtest-aws loadtest-gather loadtest-test

# Local defaults: modest for a 2-core machine (the embedded SecantusDB persists ~2k msg/s).
LT_RATE ?= 300
LT_RAMP ?= 5
LT_HOLD ?= 15
LT_USERS ?= 20
LT_CHATS ?= 20
LT_PROCESSES ?= 1
LT_OUT ?= .local/loadtest
LT_ARGS ?=
LT_PROFILE_ARGS = --rate $(LT_RATE) --ramp $(LT_RAMP) --hold $(LT_HOLD) --users $(LT_USERS) \
	--chats $(LT_CHATS) --processes $(LT_PROCESSES) --out-dir $(LT_OUT)

loadtest: $(STAMP) ## local stack + short generator run + verify + report
	$(PY) -m loadtest local --tool generator $(LT_PROFILE_ARGS) $(LT_ARGS)

loadtest-jmeter: $(STAMP) ## local stack + JMeter HTTP plan (Debian's jmeter) + verify + report
	$(PY) -m tests.setup_env
	$(PY) -m loadtest local --tool jmeter $(LT_PROFILE_ARGS) $(LT_ARGS)

loadtest-verify: $(STAMP) ## verify RUN=<run dir> against MONGO_URL (exit 1 on loss or violation)
	@test -n "$(RUN)" || { echo "usage: make loadtest-verify RUN=.local/loadtest/<run-id>"; exit 2; }
	$(PY) -m loadtest verify $(RUN) $(LT_ARGS)

loadtest-report: $(STAMP) ## rebuild the HTML report of RUN=<run dir>
	@test -n "$(RUN)" || { echo "usage: make loadtest-report RUN=.local/loadtest/<run-id>"; exit 2; }
	$(PY) -m loadtest report $(RUN) $(LT_ARGS)

# Acceptance profiles (docs/loadtest.md "On AWS"): total rate, generator tasks, connections
# and chats per task. Each task: 4 vCPU, 4 processes, ~2,500 msg/s per process.
PROFILE ?= 300k
ifeq ($(PROFILE),500k)
AWS_LT_ARGS = --rate 500000 --tasks 50 --users 5000 --chats 5000 --processes 4
else
AWS_LT_ARGS = --rate 300000 --tasks 30 --users 5000 --chats 5000 --processes 4
endif
AWS_RAMP ?= 300
AWS_HOLD ?= 900

loadtest-aws: $(STAMP) ## PROFILE=300k|500k on STACK's ECS cluster (ramp 300 s, hold 900 s), then gather
	$(PY) -m loadtest aws-run --stack $(STACK) $(AWS_LT_ARGS) --ramp $(AWS_RAMP) --hold $(AWS_HOLD) \
		--chat-size 2:60,5:30,50:10 --out-dir $(LT_OUT) --wait $(LT_ARGS)

loadtest-gather: $(STAMP) ## download and merge RUN_ID from BUCKET (then verify/report it)
	$(PY) -m loadtest gather --bucket $(BUCKET) --run-id $(RUN_ID) --out-dir $(LT_OUT)

loadtest-test: $(STAMP) ## the load-test toolkit's tests only
	$(VENV)/bin/pytest -q tests/loadtest

# Deployment targets (included by the Makefile). Needs the Pulumi CLI, Docker and AWS
# credentials; docs/deploy.md walks through them from an empty account.
#   make images                 build and push every image, tagged with the git sha
#   make preview STACK=dev      show what `deploy` would change
#   make deploy STACK=dev       create/update the stack with that image tag
#   make prewarm STACK=loadtest raise every service to its test size and wait until steady
#   make destroy STACK=dev      delete the stack
.PHONY: images preview deploy destroy prewarm prewarm-release stack-outputs infra-test

STACK ?= dev
PULUMI ?= pulumi
# The tag `make images` pushes: the short git sha, -dirty for uncommitted changes.
IMAGE_TAG ?= $(shell $(PY) -m infra.tools.ecr --print-tag 2>/dev/null)
STACK_OUTPUTS := .local/stack-$(STACK).json

define require_stack_file
	@test -f Pulumi.$(STACK).yaml || { echo "no Pulumi.$(STACK).yaml (STACK=$(STACK))"; exit 1; }
endef

images: $(STAMP) ## build the images and push them to ECR (tag = git sha; STACK picks region)
	$(PY) -m infra.tools.ecr --stack $(STACK) --tag $(IMAGE_TAG)

preview: $(STAMP) ## pulumi preview of STACK with the current image tag
	$(require_stack_file)
	$(PULUMI) stack select --create $(STACK)
	$(PULUMI) preview --stack $(STACK) --diff --config chat-platform:imageTag=$(IMAGE_TAG)

deploy: $(STAMP) ## pulumi up of STACK with the image tag `make images` pushed
	$(require_stack_file)
	$(PULUMI) stack select --create $(STACK)
	$(PULUMI) up --stack $(STACK) --config chat-platform:imageTag=$(IMAGE_TAG)

destroy: $(STAMP) ## pulumi destroy of STACK (asks for confirmation)
	$(require_stack_file)
	$(PULUMI) destroy --stack $(STACK)

stack-outputs: $(STAMP)
	@mkdir -p .local
	$(PULUMI) stack output --json --stack $(STACK) > $(STACK_OUTPUTS)

prewarm: stack-outputs ## raise STACK's services to their test size and wait until steady
	$(PY) -m infra.tools.prewarm --outputs $(STACK_OUTPUTS)

prewarm-release: stack-outputs ## after a run: give the minimum task counts back to autoscaling
	$(PY) -m infra.tools.prewarm --outputs $(STACK_OUTPUTS) --release

infra-test: $(STAMP) ## only the infra tests (Pulumi mocks, moto, images)
	$(VENV)/bin/pytest -q tests/infra

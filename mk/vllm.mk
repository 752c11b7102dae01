# The real vLLM engine environment (issue: real vLLM replicas). Placeholder until it lands.
.PHONY: vllm model
vllm:
	@true
model:
	@true

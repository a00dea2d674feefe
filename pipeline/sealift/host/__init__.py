"""The air-gapped side: install, verify, volumes, inventory, doctor, start, check, openllm, the install registry and the runtime venv. May import bento, bundle, model, serving and core."""

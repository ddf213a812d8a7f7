"""Bad-input robustness suite: malformed data, configs and model folders must fail clearly and cleanly."""

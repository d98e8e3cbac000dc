# CPU stages: the model and its variants, and the tokenized corpus splits.
# (resources per stage; profiles override them by rule name with set-resources)
STAGE_RESOURCES.update({
    "model": {"mem_mb": 8000, "runtime": 60},
    "tokens": {"mem_mb": 8000, "runtime": 120},
})

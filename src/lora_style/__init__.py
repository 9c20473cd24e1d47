"""lora-style: the guide's LoRA recipe as a build graph, as an installable package.

Organised by stage, each importing only downward:

    fileio, safetensors_io, hub, prompt_format, paths   the ground floor
    config/      the training arguments, config errors, LLaMA-Factory's facts
    data/        validation, dataset_info, token counts
    training/    everything that touches the training machine (pods, RunPod, Slurm)
    mlx/         the Mac bundle: conversion, 4-bit base, generation, metadata
    report/      the HTML report's pages and the loss plot
    tiny_model   the tiny random model the demo and the tests train

Snakefile and rules/ call the stages' command lines (`python -m lora_style.<stage>.<module>`);
scripts/ keeps the commands a user types as thin entry points.
"""

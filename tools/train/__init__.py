"""The training recipe of the embedded default model: a small unCLIP trained from scratch on
the shapes world (see docs/shapes-world.md and weights/README.md).

    python -m tools.train {clip,prior,decoder,upsampler,export,all,status,time} --run runs/default

Files, one concept each:

    config.py          the default StackConfig (and a toy "smoke" one) + per-stage hyperparameters
    run.py             the run directory and its frozen train.json
    data.py            seeded on-the-fly batches from the renderer (canonical + partial captions)
    objectives.py      the diffusion loss (eps / x0 / v targets) shared by the diffusion stages
    ema.py             exponential moving average of weights
    checkpoint.py      atomic, resumable stage checkpoints
    loop.py            the training loop every stage shares (schedule, EMA, budget, signals)
    frozen_clip.py     the trained CLIP as later stages see it, and clip_mean / clip_std
    clip_stage.py      contrastive CLIP (several positives per partial caption), zero-shot probe
    prior_stage.py     diffusion prior with caption dropout
    decoder_stage.py   decoder with caption and z_i dropout (classifier-free guidance)
    upsampler_stage.py conv-only upsamplers on crops, noise-augmented low-res condition
    stages.py          stage name -> task
    export.py          run -> model directory (EMA weights, fp16, statistics, model card)
    timing.py          measured step times and the training time they imply
"""

"""Everything that touches the training machine (a pod over SSH, or this machine).

    settings.py    PodSettings: a pod's settings, frozen, every default once (from the config schema)
    executor.py    how commands and files reach it: ssh + rsync, or this machine
    shell.py       the pod-side .sh scripts beside it: how they are sent, what they print
    estimate.py    memory, disk and steps a run needs
    preflight.py   the checks before anything is uploaded, and the opt-in setup of a fresh pod
    run_state.py   the state of a run folder on the pod
    launch.py      a run's identity, upload, launch and submit
    follow.py      wait: progress, the remote log, reconnects, resume after a crash
    fetch.py       download the best checkpoint's adapter, verified, landed atomically
    messages.py    what the user is told: errors, interruptions, hints, progress lines
    runpod.py      provider: runpod: rent, start, replace, give back a pod (API v2)
    runpod_api.py  RunPod's REST API v2: calls, retries, RFC 9457 errors
    runpod_account.py  the account's SSH keys before renting, the pod's bill after
    runpod_catalog.py  GPU stock before renting, list prices for the plan

remote_train.py is the command line the rules call (`python -m lora_style.training.remote_train`).
"""

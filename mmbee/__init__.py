"""mmbee: a streaming gift-through-rate (GTR) recommender for live streams, after MMBee (KDD'24).

Reading guide, lowest layer first (imports only point down this list):
    schemas/    the contract: pydantic models of every topic's messages (`events.py`, `topics.py`)
    encoders/   content encoders behind one interface (`base.py`, then `mfq.py`, `cva.py`, `vbf.py`)
    graph/      U2A/A2A gifting graphs, metapath expansions, GraphCL, offline-walk cache
    scorer/     the GTR model (SIM / MMoE + MFQ + GIE), metrics, training, predict API
    settings.py the only reader of environment variables
    simulator/  a seeded synthetic live-streaming world, KuaiLive-style logs, replay into Kafka
    streams/    the Faust app, agents, codec, embedded broker launcher
    jobs/       whole jobs composed of the layers below: train / evaluate from a log directory,
                the ablation experiment, the end-to-end demo
    cli.py      `python -m mmbee ...`: thin argument parsing around one library call per verb

Importing `mmbee` is cheap: heavy libraries (torch models, Whisper, Faust) load lazily.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]

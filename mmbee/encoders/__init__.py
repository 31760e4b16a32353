"""mmbee.encoders: content encoders behind one interface (`base.py`), chosen by name (`registry.py`).

Read `base.py` first (SegmentBatch, EncoderOutput, ContentEncoder, author_row), then
`registry.py`, then one model per file: `mfq.py` (MMBee's MFQ), `cva.py` (CVA, CVA over frame
tokens, CVA+text), `baselines.py` (mean pooling, MLP, fixed fusion). `batching.py` turns segment
buffers (`SegmentClosed` messages) into a `SegmentBatch`. Heavy featurizers live in
`featurizers/` and are imported lazily.
"""

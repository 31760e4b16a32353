"""The stream components: one module each, read top to bottom in the same order.

Every module here has the same shape (`mmbee.streams.runtime.component`, docs/streams.md,
"Components"):

1. a **frozen config** built from `Settings` (`config(settings)`);
2. a **pure step** `apply(config, state, item) -> Step(state, outputs, rejects)` that does no
   I/O: no Faust, no Kafka, no clock (time comes in with the item); the Faust-free cores it
   uses live in `mmbee.state`;
3. a **state codec** (how one table row is stored; None for a stateless component);
4. the **runtime** that feeds the step from the agent envelope (`mmbee.streams.runtime.agent`)
   and `register(ctx)`, which declares the agents, tables, timers and pages;
5. `COMPONENT`, the object the composition root (`mmbee.streams.app`) registers.

Nothing in `mmbee.streams.runtime` imports this package (an import-linter contract says so).
"""

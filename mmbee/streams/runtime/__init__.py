"""The stream runtime: the only part of mmbee that knows faust/mode/aiokafka mechanics.

`compat` holds every patch of a third-party internal and every private read, behind exact
version pins checked at start-up; `progress` answers "has this worker read a partition to its
end" once for every agent. The components (segments, joiner, graph, serving, ...) use these
instead of reaching into Faust themselves.
"""

"""The benchmark run: its configuration and plan (:mod:`.config`), presets (:mod:`.presets`),
the stages distill -> retrain -> attack (:mod:`.stages`), the worker pool (:mod:`.pool`) and the
runner that ties them together and writes the outputs (:mod:`.runner`)."""

"""The attack suite over torchattacks and its threat models (:mod:`.suite`), black-box transfer
and query attacks (:mod:`.blackbox`), and the timed pass every measurement makes
(:mod:`.timing`)."""

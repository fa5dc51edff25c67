"""Everything derived from records: the metrics, the tables, the figures and the BEARD log
import. Reporting reads records only and imports nothing but ``rome_bench.core``."""

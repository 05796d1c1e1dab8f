"""seqrec_fast: session-based recommendation with recurrent networks (GRU4Rec family), C++ core."""

__version__ = "0.1.0"

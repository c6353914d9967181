"""Survey machinery: reference sets, cross-matching and quality cuts, clean-up,
label transfer, cross-survey runs, chunked inference and the one catalogue builder.
"""

"""stlser's benchmarks: speed (`make bench`, `python -m benchmarks.run_all`) and accuracy
studies (`make bench-accuracy`, `python -m benchmarks.bench_accuracy`; the recipe selections
`bench_selection`, `bench_pretrain`). Run from the repository root; see benchmarks/README.md."""

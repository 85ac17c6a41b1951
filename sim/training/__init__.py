"""The whole training iteration: pipeline stages running a schedule over micro-batches, the
distributed optimizer, memory per GPU and throughput in the words of a training log."""

"""The contract: per-kind scenario schemas, the one error type users see, and the program IR
that parallelism builds and the engine runs. Imports nothing else of dlsim."""

"""Support shared by the test suite and the benchmarks: the golden micro model (whose files live in a clone's
``tests/fixtures/``), pictures to caption, hand-written curation work folders and a local OpenAI-compatible
chat server. Nothing in the library imports it."""

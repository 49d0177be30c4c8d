"""One module per analysis; each is a pure function from (model, inputs, options) to a result."""

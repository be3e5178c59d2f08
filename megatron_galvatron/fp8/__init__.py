"""Float8 linears for the transformer layers (torchao.float8 casts and matmuls), exact under any layout."""

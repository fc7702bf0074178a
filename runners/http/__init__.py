"""HTTP edge: request/response schemas, the guard middleware, the OpenAPI document."""

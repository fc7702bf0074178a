"""The request pipeline: the loaded model version and the stages that answer one request."""

"""The Ray Serve application: versioned classifier and regressor endpoints."""

"""Apple defects: synthetic photos of healthy, scab, rot and blotch apples (issue 14 builds the image pipeline,
the convolutional network and the image endpoint on them)."""

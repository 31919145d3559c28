"""Apple defects: photos of healthy, scab, rot and blotch apples, told apart by a convolutional network.

- `groups`: the photos feature group (an image source over class folders) and the view a classifier trains on;
- `models`: the convolutional network (a tf-keras build function with augmentation);
- `generate`: a day of synthetic photos (`orchard generate apple_images --count N [--bad-fraction F]`).
"""

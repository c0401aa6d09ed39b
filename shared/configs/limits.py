"""Bounds shared by several step configs."""

# numpy's global seed must stay below 2**32, and the classifier adds the fold number to its seed.
MAX_SEED = 2**31 - 1

# Upper bounds of the work one request can ask for: far above every profile (the `full` profile trains 50 GAN epochs
# at 64 px and ResNet-50 at 224 px for 15 epochs, 5 folds), far below what would run for ever or allocate a plan of
# gigabytes (epochs = 2**31 - 1 did). A request past one is INVALID_ARGUMENT / a CLI error naming the option.
MAX_EPOCHS = 10_000
MAX_BATCH_SIZE = 4_096
MAX_IMAGE_SIZE = 1_024  # image side in pixels
MAX_WIDTH = 2_048  # latent size, feature maps
MAX_IMAGES = 10_000_000  # images generated, sampled or compared
MAX_FOLDS = 20
MAX_WORKERS = 64
MAX_SHARD_IMAGES = 65_536  # images in one synthetic shard (held in memory while it is written)
MAX_SAMPLES = 100_000  # images in an O(n^2) comparison (SSIM pairs, memorization), Grad-CAM samples

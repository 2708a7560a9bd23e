namespace Lifting.Programs;

/// Named networks of the seeds' experiments, for `--net NAME` and experiment scripts.
public static class Zoo
{
    /// The names `ByName` knows.
    public static IReadOnlyList<string> Names { get; } = new[] { "lenet5", "seed001-conv", "seed001-conv-distprop" };

    /// LeNet-5 (LeCun et al. 1998) as seed 004 appendix B trains it on (Fashion-)MNIST:
    /// conv 6@5×5 (padded to keep 28×28) → ReLU → max-pool 2 → conv 16@5×5 → ReLU → max-pool 2 →
    /// dense 120 → ReLU → dense 84 → ReLU → dense. Cut after every hidden activation (the
    /// builder's default), so each conv and dense layer is a block.
    public static NestedProgram LeNet5(long[] inputShape, int classes, ILoss? loss = null)
    {
        CheckImage(inputShape, "lenet5");
        var padding = inputShape[1] == 28 ? 2 : 0;
        return Net.Input(inputShape)
            .Conv2d(6, 5, padding: padding).ReLU().MaxPool2d(2)
            .Conv2d(16, 5).ReLU().MaxPool2d(2)
            .Flatten().Dense(120).ReLU().Dense(84).ReLU().Dense(classes)
            .Loss(loss ?? Losses.CrossEntropy);
    }

    /// Seed 001 §5's network: a LeNet-style convolutional feature extractor (two conv-pool
    /// blocks) and a fully connected classifier, with one cut after the convolutions.
    public static NestedProgram Seed001Conv(long[] inputShape, int classes, ILoss? loss = null)
    {
        CheckImage(inputShape, "seed001-conv");
        var padding = inputShape[1] == 28 ? 2 : 0;
        return Net.Input(inputShape)
            .Conv2d(6, 5, padding: padding).ReLU().MaxPool2d(2)
            .Conv2d(16, 5).ReLU().MaxPool2d(2)
            .Cut()
            .Flatten().Dense(120).ReLU().Dense(84).ReLU().Dense(classes)
            .Loss(loss ?? Losses.CrossEntropy);
    }

    /// `Seed001Conv` with the second ReLU after the pooling instead of before it: the same function
    /// (ReLU and max-pooling commute) and the same parameters, but the first block ends in the ReLU,
    /// so DistProp's pre-activation states leave it out of the cut (seed 001 §5: "for DistProp, we
    /// remove the ReLU non-linearity").
    public static NestedProgram Seed001ConvDistProp(long[] inputShape, int classes, ILoss? loss = null)
    {
        CheckImage(inputShape, "seed001-conv-distprop");
        var padding = inputShape[1] == 28 ? 2 : 0;
        return Net.Input(inputShape)
            .Conv2d(6, 5, padding: padding).ReLU().MaxPool2d(2)
            .Conv2d(16, 5).MaxPool2d(2).ReLU()
            .Cut()
            .Flatten().Dense(120).ReLU().Dense(84).ReLU().Dense(classes)
            .Loss(loss ?? Losses.CrossEntropy);
    }

    /// A named network for inputs of `inputShape` and `classes` classes.
    public static NestedProgram ByName(string name, long[] inputShape, int classes, ILoss? loss = null) => name.Trim().ToLowerInvariant() switch
    {
        "lenet5" or "lenet-5" => LeNet5(inputShape, classes, loss),
        "seed001-conv" => Seed001Conv(inputShape, classes, loss),
        "seed001-conv-distprop" => Seed001ConvDistProp(inputShape, classes, loss),
        _ => throw new ArgumentException($"Unknown network '{name}' (known: {string.Join(", ", Names)})."),
    };

    private static void CheckImage(long[] shape, string name)
    {
        if (shape.Length != 3 || shape[1] < 12 || shape[2] < 12)
            throw new ArgumentException($"{name} needs [channels, height, width] images of at least 12×12, got [{Shapes.Show(shape)}].");
    }
}

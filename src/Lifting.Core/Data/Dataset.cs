using TorchSharp;
using static TorchSharp.torch;

namespace Lifting.Data;

/// A labelled dataset held as two tensors: inputs [N, …ExampleShape] (float32, normalised) and
/// labels [N] (int64, in 0 … ClassCount−1).
public sealed class Dataset : IDisposable
{
    public Dataset(string name, Tensor inputs, Tensor labels, int classCount)
    {
        if (inputs.shape.Length < 2) throw new DataFormatException($"{name}: inputs need a batch dimension and an example shape, got rank {inputs.shape.Length}");
        if (labels.shape.Length != 1 || labels.shape[0] != inputs.shape[0])
            throw new DataFormatException($"{name}: {inputs.shape[0]} inputs but labels of shape [{string.Join(", ", labels.shape)}]");
        if (classCount < 1) throw new DataFormatException($"{name}: class count must be positive, got {classCount}");
        if (labels.dtype != ScalarType.Int64) throw new DataFormatException($"{name}: labels must be int64, got {labels.dtype}");
        if (inputs.shape[0] > 0)
        {
            using var _ = no_grad();
            long lo = labels.min().ToInt64(), hi = labels.max().ToInt64();
            if (lo < 0 || hi >= classCount) throw new DataFormatException($"{name}: labels span {lo}..{hi}, outside 0..{classCount - 1}");
            if (!inputs.isfinite().all().ToBoolean()) throw new DataFormatException($"{name}: inputs contain NaN or infinite values");
        }
        Name = name;
        Inputs = inputs.DetachFromDisposeScope();
        Labels = labels.DetachFromDisposeScope();
        ClassCount = classCount;
    }

    public string Name { get; }
    public Tensor Inputs { get; }
    public Tensor Labels { get; }
    public int ClassCount { get; }
    public int Count => (int)Labels.shape[0];
    public long[] ExampleShape => Inputs.shape.Skip(1).ToArray();

    public Dataset To(Device device) => new(Name, Inputs.to(device), Labels.to(device), ClassCount);

    public void Dispose()
    {
        Inputs.Dispose();
        Labels.Dispose();
    }
}

/// Scalar standardisation x ← (x − Mean) / Std, with Mean and Std taken from the training split
/// (Mean 0 and Std 1 when the inputs are kept in [0, 1]); for tabular data (CSV) per feature j,
/// x_j ← (x_j − FeatureMeans[j]) / FeatureStds[j], with Mean 0 and Std 1.
public sealed record Normalisation(double Mean, double Std)
{
    public IReadOnlyList<double> FeatureMeans { get; init; } = Array.Empty<double>();
    public IReadOnlyList<double> FeatureStds { get; init; } = Array.Empty<double>();
    public bool PerFeature => FeatureMeans.Count > 0;
}

/// The three splits of a dataset and the normalisation applied to all of them (taken from `Train`).
/// `Validation` is carved from the original training set (`DataOptions.ValidationFraction`); it
/// drives every selection (early stopping, best epoch, checkpoint, default tuning). `Test` is only
/// reported. `Validation` is empty when the caller asked for no validation split.
public sealed record DataSplit(Dataset Train, Dataset Validation, Dataset Test, Normalisation Normalisation) : IDisposable
{
    public bool HasValidation => Validation.Count > 0;

    /// The name of each class (CSV labels as written); empty when the classes are 0 … K−1.
    public IReadOnlyList<string> ClassNames { get; init; } = Array.Empty<string>();

    public void Dispose()
    {
        Train.Dispose();
        Validation.Dispose();
        Test.Dispose();
    }
}

/// How input values are scaled after loading.
public enum InputScaling
{
    /// Values in [0, 1] (pixels / 255, digits / 16), then standardised with the training split's
    /// scalar mean and std (the default).
    Standardise,
    /// Values in [0, 1], not standardised (seed 002's Fenchel back-propagation experiment feeds
    /// MNIST this way: with standardised inputs its all-negative initialisation is no dead zone).
    UnitRange,
}

/// How a dataset is loaded: the device its tensors live on, the input scaling and the validation split.
public sealed record DataOptions
{
    /// The seed of the validation split unless another is given: fixed, so that every run, seed and
    /// method sees the same split.
    public const int DefaultSplitSeed = 9127;

    public Device Device { get; init; } = CPU;

    /// The fraction of the training set held out for validation (rounded, at least one example).
    /// 0 means no validation split: selection then falls back to the last epoch and early stopping
    /// is refused.
    public double ValidationFraction { get; init; } = 0.1;

    /// The seed of the shuffle that picks the validation examples.
    public int SplitSeed { get; init; } = DefaultSplitSeed;

    /// Standardised inputs (default) or raw values in [0, 1].
    public InputScaling Scaling { get; init; } = InputScaling.Standardise;

    /// CSV data: the label column, by header name or 0-based index (negative from the end); null =
    /// the last column. Refused for other data.
    public string? Label { get; init; }

    /// CSV data: the fraction of the rows held out as the test split (picked by a shuffle with
    /// `SplitSeed`); null = `DefaultTestFraction`. Refused for data that comes with a test split.
    public double? TestFraction { get; init; }

    public const double DefaultTestFraction = 0.2;

    /// CSV data: leading lines to skip and whether the first row is a header (`CsvFormat`); null =
    /// none skipped, header detected. Refused for other data.
    public CsvFormat? Csv { get; init; }

    /// Statistics to standardise with instead of the training split's (evaluating a trained
    /// network on new data uses the statistics it was trained with).
    public Normalisation? FixedNormalisation { get; init; }

    /// CSV data: the class names to map labels with instead of those found in the file.
    public IReadOnlyList<string>? ClassNames { get; init; }

    public void Validate()
    {
        if (!(ValidationFraction >= 0 && ValidationFraction < 1))
            throw new ArgumentOutOfRangeException(nameof(ValidationFraction), $"Invalid validation fraction: {ValidationFraction} (expected 0 <= fraction < 1).");
        if (TestFraction is { } t && !(t > 0 && t < 1))
            throw new ArgumentOutOfRangeException(nameof(TestFraction), $"Invalid test fraction: {t} (expected 0 < fraction < 1).");
    }
}

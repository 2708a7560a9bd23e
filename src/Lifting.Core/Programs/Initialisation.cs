namespace Lifting.Programs;

/// How a program's parameters are initialised.
public enum InitialisationScheme
{
    /// Each layer's own initialisers (PyTorch's defaults: U(±1/√fan_in) for weights and biases).
    LayerDefault,
    /// Glorot-uniform weights and zero biases (Flux's `Dense` default; seed 002 appendix C).
    Glorot,
    /// Glorot-uniform weights and zero biases, but the first weight tensor all-negative,
    /// U(−√(6 / (fan_in + fan_out)), 0): seed 002 appendix C's `use_negative_init`, on which
    /// back-propagation stays at chance with inputs in [0, 1] and Fenchel back-propagation with a
    /// large enough β does not (seed 002 §5).
    NegativeFirstLayer,
    /// He (Kaiming) uniform weights U(±√(6 / fan_in)) and zero biases (He et al. 2015): the variance
    /// that keeps ReLU activations' scale through depth.
    He,
}

/// Initialisation schemes by name (the host's `--init`) and their application to a program.
public static class Initialisation
{
    /// The names `Parse` knows, in the order of `InitialisationScheme`.
    public static IReadOnlyList<string> Names { get; } = new[] { "default", "glorot", "glorot-negative-first", "he" };

    public static InitialisationScheme Parse(string name) => name.Trim().ToLowerInvariant() switch
    {
        "default" => InitialisationScheme.LayerDefault,
        "glorot" => InitialisationScheme.Glorot,
        "glorot-negative-first" => InitialisationScheme.NegativeFirstLayer,
        "he" or "kaiming" => InitialisationScheme.He,
        _ => throw new ArgumentException($"Unknown initialisation '{name}' (known: {string.Join(", ", Names)})."),
    };

    public static string Name(InitialisationScheme scheme) => Names[(int)scheme];

    /// `program` initialised by `scheme`. Under the Glorot schemes every parameter of rank >= 2 is a
    /// weight laid out [out, in, …] (fans from `Initialisers.Fans`) and every other one (biases)
    /// starts at zero; custom layers join by that layout.
    public static NestedProgram Apply(this NestedProgram program, InitialisationScheme scheme)
    {
        if (scheme == InitialisationScheme.LayerDefault) return program;
        var first = program.ParameterSpecs.Select((spec, i) => (spec, i)).Where(p => p.spec.Shape.Length >= 2).Select(p => p.i).DefaultIfEmpty(-1).First();
        if (scheme == InitialisationScheme.NegativeFirstLayer && first < 0)
            throw new ArgumentException("The all-negative first-layer initialisation needs a weight tensor (rank >= 2); the program has none.");
        return program.WithInitialisers((i, spec) =>
        {
            if (spec.Shape.Length < 2) return Initialisers.Zeros;
            var (fanIn, fanOut) = Initialisers.Fans(spec.Shape);
            if (scheme == InitialisationScheme.He) return Initialisers.HeUniform(fanIn);
            return scheme == InitialisationScheme.NegativeFirstLayer && i == first
                ? Initialisers.NegativeGlorotUniform(fanIn, fanOut)
                : Initialisers.GlorotUniform(fanIn, fanOut);
        });
    }
}

using Lifting;
using Lifting.Data;
using Lifting.Programs;
using Lifting.Training;

// Experiment scripts written against the builder. Usage:
//   dotnet run --project src/Lifting.Examples -c Release -- sweep KEY=VALUE ...   one run, a line per epoch
//   dotnet run --project src/Lifting.Examples -c Release -- table KEY=VALUE ...   the MNIST-10k table (docs/results)
//   dotnet run --project src/Lifting.Examples -c Release -- probe KEY=VALUE ...   ExtraProp's rows, batch by batch
//   dotnet run --project src/Lifting.Examples -c Release -- steptime              where an ExtraProp step's time goes
// e.g. sweep method=extraprop lr=1e-3 rule=adam state-rule=constant lr-states=0.5 epochs=10

var settings = args.Skip(1).Select(a => a.Split('=', 2)).ToDictionary(p => p[0], p => p[1]);
if (settings.TryGetValue("threads", out var threadCount)) TorchSharp.torch.set_num_threads(int.Parse(threadCount));
if (args.FirstOrDefault() == "table") return Lifting.Examples.ResultsTable.Run(settings);
if (args.FirstOrDefault() == "probe") return Lifting.Examples.Probe.Run(settings);
if (args.FirstOrDefault() == "steptime") return Lifting.Examples.StepTime.Run(settings);
string Get(string key, string fallback) => settings.TryGetValue(key, out var v) ? v : fallback;
double? Num(string key) => settings.TryGetValue(key, out var v) ? double.Parse(v, System.Globalization.CultureInfo.InvariantCulture) : null;

var data = DatasetCatalog.Load(Get("data", "mnist-10k"));
var program = Net.Mlp(data.Train.ExampleShape, Get("net", "784-256-10").Split('-').Select(long.Parse).ToArray(),
    Activations.ByName(Get("activation", "relu")), Losses.CrossEntropy);
var method = Methods.Resolve(new MethodSettings
{
    Method = Get("method", "extraprop"),
    Solver = settings.GetValueOrDefault("solver"),
    StepRule = settings.GetValueOrDefault("rule"),
    StateStepRule = settings.GetValueOrDefault("state-rule"),
    MultiplierStepRule = settings.GetValueOrDefault("multiplier-rule"),
    LearningRate = Num("lr"),
    StateLearningRate = Num("lr-states"),
    MultiplierLearningRate = Num("lr-multipliers"),
    Epsilon = Num("eps"),
    Augmentation = Num("c"),
    MuInitial = Num("mu"),
    MuGrowth = Num("mu-growth"),
    MuMaximum = Num("mu-max"),
    StateSteps = (int?)Num("state-steps"),
    InnerIterations = (int?)Num("inner"),
    InnerSolver = settings.GetValueOrDefault("inner-solver"),
    WeightSchedule = settings.GetValueOrDefault("schedule"),
    Settle = Num("settle"),
    SettleStateScale = Num("settle-states"),
    ReparametriseStates = settings.TryGetValue("reparametrise", out var rep) ? bool.Parse(rep) : null,
});
var tag = string.Join(" ", args.Skip(1));
var solver = method.Solver;
var result = Trainer.Train(program, data, method.Formulation, solver, method.StepRules,
    new TrainingOptions { Epochs = (int)(Num("epochs") ?? 10), BatchSize = (int)(Num("batch") ?? 128), Seed = (int)(Num("seed") ?? 0),
        Patience = (int)(Num("patience") ?? 0), IterationsPerBatch = (int)(Num("iterations") ?? 1), CosineToBackprop = settings.ContainsKey("cosine") },
    Observers.OnEpoch(m => Console.WriteLine($"[{tag}] epoch {m.Epoch} loss {m.TrainLoss:F4} acc {m.TestAccuracy:F4} defect {m.MeanDefect:E2} cos {m.CosineToBackprop:F3} {m.Seconds:F2}s")));
Console.WriteLine($"RESULT [{tag}] final {result.FinalTestAccuracy:F4} best {result.BestTestAccuracy:F4}@{result.BestEpoch} defect {result.FinalDefect:E2} s/epoch {result.SecondsPerEpoch:F2}");
return 0;

using System.Globalization;
using Lifting;
using Lifting.Data;
using Lifting.Programs;
using Lifting.Training;

// Experiment scripts written against the builder. Usage:
//   dotnet run --project src/Lifting.Examples -c Release -- sweep KEY=VALUE ...   one run, a line per epoch
//   dotnet run --project src/Lifting.Examples -c Release -- table KEY=VALUE ...   the MNIST-10k table (docs/results)
//   dotnet run --project src/Lifting.Examples -c Release -- probe KEY=VALUE ...   ExtraProp's rows, batch by batch
//   dotnet run --project src/Lifting.Examples -c Release -- steptime              where an ExtraProp step's time goes
//   dotnet run --project src/Lifting.Examples -c Release -- fenchel-bp KEY=VALUE  seed 002's Fenchel BP experiment (docs/results)
//   dotnet run --project src/Lifting.Examples -c Release -- distprop-table|distprop-memory|distprop-carry|distprop-sweep KEY=VALUE ...
//                                                                                   seed 001 Table 1 side by side, memory, defaults, robustness
//   dotnet run --project src/Lifting.Examples -c Release -- am EXPERIMENT KEY=VALUE ...  seed 004's experiments (docs/results/am-*.md)
//   dotnet run --project src/Lifting.Examples -c Release -- rnn seqmnist KEY=VALUE ...    seed 004 appendix C, sequential MNIST-10k (docs/results/rnn-seqmnist-*.md)
//   dotnet run --project src/Lifting.Examples -c Release -- depth ladder KEY=VALUE ...   issue 30's depth ladder, resumable (docs/results/depth-ladder.md)
//   dotnet run --project src/Lifting.Examples -c Release -- scaling-model KEY=VALUE ...  issue 28's throughput model on 2-64 machines (docs/results/layer-parallel-model.md)
// sweep's keys are data, net, activation, epochs, batch, seed, patience, iterations, cosine, threads and
// method; every other key is a parameter of the method (`lifting methods` lists them), e.g.
//   sweep method=extraprop lr=1e-3 optimizer=adam optimizer-states=constant lr-states=0.5 epochs=10


// A bad setting (unknown name, unparsable number, missing file) is one line on stderr and exit 2.
try
{
    return Run(args);
}
catch (Exception e) when (e is ArgumentException or FormatException or InvalidOperationException or IOException or KeyNotFoundException)
{
    Console.Error.WriteLine($"examples: error: {e.Message.ReplaceLineEndings(" ").Trim()}");
    return 2;
}

static int Run(string[] args)
{
    if (args.FirstOrDefault() == "scalar-audit") return Lifting.Examples.ScalarAuditCommand.Run(args.Skip(1).ToArray());
    var settings = Lifting.Examples.Settings.Parse(args.Skip(1));
    if (settings.ContainsKey("threads")) Threads.Set(settings.Int("threads", 0));
    if (args.FirstOrDefault() == "table") return Lifting.Examples.ResultsTable.Run(settings);
    if (args.FirstOrDefault() == "probe") return Lifting.Examples.Probe.Run(settings);
    if (args.FirstOrDefault() == "am") return Lifting.Examples.AlternatingMinimisationTable.Run(args.ElementAtOrDefault(1) ?? "", settings);
    if (args.FirstOrDefault() == "steptime") return Lifting.Examples.StepTime.Run(settings);
    if (args.FirstOrDefault() == "fenchel-bp") return Lifting.Examples.FenchelBackpropExperiment.Run(settings);
    if (args.FirstOrDefault() == "distprop-table") return Lifting.Examples.DistPropTable.Run(settings);
    if (args.FirstOrDefault() == "distprop-memory") return Lifting.Examples.DistPropMemory.Run(settings);
    if (args.FirstOrDefault() == "distprop-carry") return Lifting.Examples.DistPropCarryOver.Run(settings);
    if (args.FirstOrDefault() == "distprop-sweep") return Lifting.Examples.DistPropSweep.Run(settings);
    if (args.FirstOrDefault() == "contrastive-probe") return Lifting.Examples.ContrastiveProbe.Run(settings);
    if (args.FirstOrDefault() == "contrastive") return Lifting.Examples.ContrastiveTable.Run(settings, args);
    if (args.FirstOrDefault() == "rnn") return Lifting.Examples.SequentialMnist.Run(args.ElementAtOrDefault(1) ?? "", Lifting.Examples.Settings.Parse(args.Skip(2)), args);
    if (args.FirstOrDefault() == "depth") return Lifting.Examples.DepthLadder.Run(args.ElementAtOrDefault(1) ?? "", Lifting.Examples.Settings.Parse(args.Skip(2)), args);
    if (args.FirstOrDefault() == "epc-probe") return Lifting.Examples.EpcProbe.Run(settings);
    if (args.FirstOrDefault() == "scaling-model") return Lifting.Examples.ScalingModel.Run(settings);

    var runKeys = new HashSet<string> { "data", "net", "activation", "epochs", "batch", "seed", "patience", "iterations", "cosine", "threads", "method" };

    using var data = DatasetCatalog.Load(settings.Text("data", "mnist-10k"));
    var program = Net.Mlp(data.Train.ExampleShape, settings.Longs("net", "784-256-10", '-'),
        Activations.ByName(settings.Text("activation", "relu")), Losses.CrossEntropy);
    var method = Methods.Resolve(new MethodSettings(settings.Text("method", "extraprop"))
    {
        Values = settings.Where(kv => !runKeys.Contains(kv.Key)).ToDictionary(kv => kv.Key, kv => kv.Value),
    });
    var tag = string.Join(" ", args.Skip(1));
    using var result = Trainer.Train(program, data, method.Formulation, method.Solver, method.StepRules,
        new TrainingOptions { Epochs = settings.Int("epochs", 10), BatchSize = settings.Int("batch", 128), Seed = settings.Int("seed", 0),
            Patience = settings.Int("patience", 0), IterationsPerBatch = settings.Int("iterations", 1), CosineToBackprop = settings.ContainsKey("cosine") },
        Observers.OnEpoch(m => Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"[{tag}] epoch {m.Epoch} loss {m.TrainLoss:F4} objective {m.Objective:G4} val {m.ValidationAccuracy:F4} test {m.TestAccuracy:F4} defect {m.MeanDefect:E2} cos {m.CosineToBackprop:F3} {m.Seconds:F2}s"))));
    Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
        $"RESULT [{tag}] selected epoch {result.SelectedEpoch} (validation {result.Selected.ValidationAccuracy:F4}) test {result.Selected.TestAccuracy:F4}; " +
        $"final validation {result.Final.ValidationAccuracy:F4} test {result.Final.TestAccuracy:F4} defect {result.FinalDefect:E2} s/epoch {result.SecondsPerEpoch:F2}"));
    return 0;
}

/// The F# scripts of src/Lifting.Examples run as a user runs them: `dotnet fsi SCRIPT` after the
/// build of src/Lifting.Examples (which this test project depends on, so it is built first).
module Lifting.Tests.ScriptTests

open System
open System.IO
open Expecto
open Lifting.Tests.PackageTests

[<Tests>]
let tests =
    testSequenced <| testList "ScriptTests" [
        test "compare.fsx trains backprop and ExtraProp on digits (5 epochs), prints both test accuracies (>= 0.8) and writes the plot as a PNG" {
            let dir = Path.Combine(Path.GetTempPath(), "lifting-script-" + Guid.NewGuid().ToString("N"))
            Directory.CreateDirectory dir |> ignore
            try
                let png = Path.Combine(dir, "compare.png")
                let script = Path.Combine(repository.Force(), "src", "Lifting.Examples", "compare.fsx")
                let output = run dir [] "dotnet" [ "fsi"; script; "--epochs"; "5"; "--out"; png ]
                let results = accuracies output
                Expect.equal (List.map fst results) [ "backprop"; "extraprop" ] $"two result lines:\n{output}"
                for (name, accuracy) in results do Expect.isGreaterThanOrEqual accuracy 0.8 $"{name}: {output}"
                let bytes = File.ReadAllBytes png
                Expect.isGreaterThan bytes.Length 2000 "a non-trivial image"
                Expect.sequenceEqual bytes.[0..7] [| 0x89uy; 0x50uy; 0x4Euy; 0x47uy; 0x0Duy; 0x0Auy; 0x1Auy; 0x0Auy |] "a PNG file"
            finally Directory.Delete(dir, true)
        }
    ]

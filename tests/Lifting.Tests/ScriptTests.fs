/// The F# scripts of src/Lifting.Examples run as a user runs them: `dotnet fsi SCRIPT` after the
/// build of src/Lifting.Examples (which this test project depends on, so it is built first); and
/// the experiment program's answer to a bad setting.
module Lifting.Tests.ScriptTests

open System
open System.IO
open Expecto
open Lifting.Tests.PackageTests

/// The built experiment program, in the configuration of these tests (bin/CONFIG/TFM).
let examplesDll =
    let tfm = DirectoryInfo(AppContext.BaseDirectory.TrimEnd(Path.DirectorySeparatorChar))
    let configuration = match tfm.Parent with null -> "Release" | p -> p.Name
    Path.Combine(repository.Force(), "src", "Lifting.Examples", "bin", configuration, tfm.Name, "Lifting.Examples.dll")

/// Exit code and standard error of `dotnet Lifting.Examples.dll ARGS`.
let examples (args: string list) =
    let info = Diagnostics.ProcessStartInfo("dotnet", RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false)
    info.ArgumentList.Add examplesDll
    for a in args do info.ArgumentList.Add a
    use p = match Diagnostics.Process.Start info with null -> failwith "could not start dotnet" | p -> p
    let out = p.StandardOutput.ReadToEndAsync()
    let err = p.StandardError.ReadToEndAsync()
    p.WaitForExit()
    p.ExitCode, out.Result, err.Result

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
        test "the experiment program answers an unparsable setting with one line naming the key and exit 2" {
            for args, key in [ [ "distprop-carry"; "epochs=abc" ], "epochs"; [ "sweep"; "net=784-x-10" ], "net"; [ "table"; "seeds=0,x" ], "seeds" ] do
                let code, _, err = examples args
                Expect.equal code 2 $"exit 2 for %A{args}: {err}"
                Expect.equal (err.Trim().Split('\n').Length) 1 $"one line: {err}"
                Expect.stringContains err $"examples: error: Invalid value for '{key}'" $"names the key: {err}"
        }
        test "distprop-sweep answers an unknown method with one line naming it and the methods it has factors for, and exit 2" {
            let code, _, err = examples [ "distprop-sweep"; "methods=distprop,nosuch"; "out=" + Path.Combine(Path.GetTempPath(), "unwritten-" + Guid.NewGuid().ToString("N") + ".md") ]
            Expect.equal code 2 $"exit 2: {err}"
            Expect.equal (err.Trim().Split('\n').Length) 1 $"one line: {err}"
            Expect.stringContains err "examples: error: Unknown sweep method 'nosuch' (expected one of: distprop-seed001, distprop, extraprop)" err
        }
    ]

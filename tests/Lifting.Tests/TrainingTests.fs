module Lifting.Tests.TrainingTests

open Expecto

[<Tests>]
let tests = testList "TrainingTests" []

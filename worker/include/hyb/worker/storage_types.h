// The torch-free model-directory and task-file types the runtime is built on, named in
// hyb::worker. They live in storage/ (hyb::storage) so that the coordinator, which links no
// LibTorch, can parse a teacher's config.json, load its tokenizer.json and read task files when
// it validates a job; the runtime keeps using them unqualified.
#pragma once

#include "hyb/storage/linear_mixer_options.h"
#include "hyb/storage/model_config.h"
#include "hyb/storage/task_file.h"
#include "hyb/storage/tokenizer.h"

namespace hyb::worker {

// config.json (storage/model_config.h)
using storage::AttentionKind;
using storage::ModelConfig;
using storage::ParseModelConfig;
using storage::RopeConfig;
using storage::RopeType;
// The linear mixer's settings (storage/linear_mixer_options.h)
using storage::LinearMixerOptions;
using storage::LinearMixerOptionsToJson;
using storage::LinearMixerType;
using storage::LinearMixerTypeName;
using storage::ParseLinearMixerOptions;
// tokenizer.json (storage/tokenizer.h)
using storage::Tokenizer;
// Task files (storage/task_file.h)
using storage::LoadTaskExamples;
using storage::ParseTaskKind;
using storage::TaskExample;
using storage::TaskKind;
using storage::TaskKindName;

}  // namespace hyb::worker

// blip.h: placeholder
#pragma once

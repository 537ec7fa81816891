// png.h: placeholder
#pragma once
